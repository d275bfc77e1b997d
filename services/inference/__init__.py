"""TorchServe side: wire protocol, generator and encoder handlers, archive building and the launcher."""
