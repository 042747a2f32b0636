"""Scale-out on Ray Serve: the same pipeline in replicas behind Ray's gRPC and HTTP proxies."""
