"""The split deployment: the model server (GeneralModelService over bRPC) and the engine that calls it."""
