"""Generated protobuf and gRPC stubs for package adbid.v1 (built by setup.py from proto/)."""
