"""The ``kubeloop.io/v1alpha1`` API: pydantic models of the three kinds, and their CRDs.

* :mod:`~kubeloop.api.trainingrun`, :mod:`~kubeloop.api.modeldeployment`,
  :mod:`~kubeloop.api.driftpolicy`: spec and status of each kind (the source of truth).
* :mod:`~kubeloop.api.common`: shared pieces (references, resources, durations, URIs,
  Condition) and :func:`~kubeloop.api.common.parse_duration`.
* :mod:`~kubeloop.api.conditions`: condition types, reasons and
  :func:`~kubeloop.api.conditions.set_condition`.
* :mod:`~kubeloop.api.wire`: :func:`~kubeloop.api.wire.to_wire` and
  :func:`~kubeloop.api.wire.from_wire` between models and API dicts.
* :mod:`~kubeloop.api.crdgen`: generates ``crds/`` (``make crds``).

Importing this package imports nothing else, so a runtime that only needs the condition
vocabulary does not pay for building every model.
"""
