"""State shared by the services: artifact store, adapted-generator index and job records in Redis."""
