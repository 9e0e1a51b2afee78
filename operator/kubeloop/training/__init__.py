"""The parts of ``kubeloop train``: data, validation, estimators, evaluation, artifacts, result.

Nothing is imported here on purpose: the operator imports :mod:`kubeloop.training.result` to
read a trainer's termination message, and must not pay for scikit-learn or pandas to do so.
"""
