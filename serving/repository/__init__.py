"""The model repository: a model's numbered version folders on disk, the version policy that picks the served
ones, and the change detection that tells the server what to load and unload."""
