"""The Open Inference Protocol's gRPC messages: the protocol's own .proto and its generated
Python module (``hack/serving/generate-grpc``; never edited by hand)."""
