"""Kubeloop: train, serve, watch for drift and retrain, inside Kubernetes."""

__version__ = "0.1.0"
API_GROUP = "kubeloop.io"
API_VERSION = "v1alpha1"
