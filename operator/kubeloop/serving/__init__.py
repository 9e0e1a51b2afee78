"""The model server behind `kubeloop serve`: model runtime, data plane, batching, metrics."""
