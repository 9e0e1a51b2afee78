"""Which container images the operator runs for a spec (issue 13, "Images").

The estimator allow-list and skops trust only bound what a TrainingRun or ModelDeployment can
do if the code in the pod is the operator's own: a spec that picks its image picks its code.
So a spec's image (TrainingRun ``spec.image``, ModelDeployment ``spec.server.image``, the
TrainingRuns a DriftPolicy creates from its template) must be one the operator is configured
to run:

* no image in the spec: the operator's runtime image (always allowed);
* the runtime image itself, or an entry of the operator setting ``allowed_images`` (the chart
  value ``runtime.allowedImages``, env ``KUBELOOP_ALLOWED_IMAGES``): an entry ending in ``/`` allows
  every repository below that registry path, an entry ending in ``:`` every tag and digest of
  that repository, any other entry exactly that reference;
* an image that is not a well-formed reference is refused even when it starts with an allowed
  prefix (``reg.example/team/../x``), so a prefix can never be stepped out of.

Matching is on the text as written: ``python:3.12`` is not ``docker.io/library/python:3.12``.
A refusal is the ``ImageNotAllowed`` reason with a message naming the field, the image and the
allowed list. Pure: no I/O, no kopf, no kubernetes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from kubeloop.api.conditions import Reason

IMAGE_NOT_ALLOWED = Reason.IMAGE_NOT_ALLOWED
"""Condition/Event reason: a spec asks for an image the operator is not configured to run."""
ALLOWED_IMAGES_SETTING = "the chart value runtime.allowedImages (KUBELOOP_ALLOWED_IMAGES)"

# The distribution reference grammar, simplified: [domain[:port]/]path(/path)*[:tag][@digest].
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?"
_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH}(?:/{_PATH})*"
_REFERENCE = re.compile(rf"^{_NAME}(?::{_TAG})?(?:@{_DIGEST})?$")
_TAG_AND_DIGEST = re.compile(rf"^{_TAG}(?:@{_DIGEST})?$")
_BELOW_PATH = re.compile(rf"^{_PATH}(?:/{_PATH})*(?::{_TAG})?(?:@{_DIGEST})?$")
_REGISTRY_PATH = re.compile(rf"^(?:{_DOMAIN}/)?(?:{_PATH}/)*$")


class ImageSettingError(ValueError):
    """An entry of the allowed-images setting that cannot mean what it says."""


def is_reference(image: str) -> bool:
    """Whether ``image`` is a well-formed image reference (no spaces, no ``..``, no scheme)."""
    return bool(_REFERENCE.match(image))


def check_allowed_entry(entry: str) -> str:
    """Validate one entry of the setting; the error names the entry and the fix."""
    if entry.endswith(":"):
        if not re.match(rf"^{_NAME}:$", entry):
            raise ImageSettingError(
                f"allowed image {entry!r}: an entry ending in ':' must be a repository "
                "(e.g. 'registry.example/kubeloop:') and allows its tags"
            )
        return entry
    if entry.endswith("/"):
        if entry == "/" or not _REGISTRY_PATH.match(entry):
            raise ImageSettingError(
                f"allowed image {entry!r}: an entry ending in '/' must be a registry path "
                "(e.g. 'registry.example/team/') and allows the repositories below it"
            )
        return entry
    if not is_reference(entry):
        raise ImageSettingError(
            f"allowed image {entry!r} is not an image reference: use an exact reference "
            "('registry.example/kubeloop:1.4'), a registry path ending in '/' or a repository "
            "ending in ':'"
        )
    return entry


def entry_allows(entry: str, image: str) -> bool:
    """Whether one allow-list entry admits ``image`` (a well-formed reference)."""
    if entry.endswith(":"):
        return image.startswith(entry) and bool(_TAG_AND_DIGEST.match(image[len(entry):]))
    if entry.endswith("/"):
        return image.startswith(entry) and bool(_BELOW_PATH.match(image[len(entry):]))
    return image == entry


@dataclass(frozen=True)
class ImagePolicy:
    """The images the operator runs: its runtime image and the configured allow-list."""

    runtime_image: str
    allowed: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, runtime_image: str, allowed: Iterable[str]) -> ImagePolicy:
        return cls(runtime_image, tuple(check_allowed_entry(entry.strip()) for entry in allowed if entry.strip()))

    def describe(self) -> str:
        """The allowed list as a message shows it."""
        return ", ".join(repr(entry) for entry in (self.runtime_image, *self.allowed))

    def allows(self, image: str) -> bool:
        if image == self.runtime_image:
            return True
        if not is_reference(image):
            return False
        return any(entry_allows(entry, image) for entry in self.allowed)

    def problem(self, field: str, image: str | None) -> str | None:
        """None when ``image`` (from ``field``; None = not set) may run, else the refusal."""
        if image is None or self.allows(image):
            return None
        malformed = "" if is_reference(image) else " (not a well-formed image reference)"
        return (
            f"{field} {image!r} is not allowed{malformed}: the operator runs only "
            f"{self.describe()} (set by {ALLOWED_IMAGES_SETTING}); remove {field} to use the "
            "operator's runtime image, or ask the operator's administrator to allow this image"
        )


__all__ = [
    "ALLOWED_IMAGES_SETTING",
    "IMAGE_NOT_ALLOWED",
    "ImagePolicy",
    "ImageSettingError",
    "check_allowed_entry",
    "entry_allows",
    "is_reference",
]
