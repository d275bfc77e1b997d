"""The gRPC editor: Editor and Adaptation services over a transport-free core (services.editor.core)."""
