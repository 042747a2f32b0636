"""The Open Inference Protocol (KServe V2): the model's V2 view and its REST and gRPC doors."""
