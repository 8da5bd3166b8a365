"""Generated protobuf and gRPC stubs of the ringd.v1 contract (made by `make proto`)."""
