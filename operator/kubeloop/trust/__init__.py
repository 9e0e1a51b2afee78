"""What Kubeloop trusts: one policy module per concern, and every caller uses it.

* :mod:`kubeloop.trust.urls`: which Prometheus endpoints the operator may query, which storage
  URIs it may read itself, and what of a remote answer may be repeated to users.
* :mod:`kubeloop.trust.run_directory`: what Kubeloop writes into a run directory, so its
  cleanup deletes that and refuses anything else.
* the other modules: which types a model artifact may contain, and how it is loaded.
"""
