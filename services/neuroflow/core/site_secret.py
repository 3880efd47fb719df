"""Which secret a process keys pseudonyms with, decided once at start.

The distributed runtime must have the site's own (``NEUROFLOW_KEYS__SECRET`` or ``NEUROFLOW_KEYS__SECRET_FILE``,
the same on every process of the site): without one it refuses to start, since keys made with a public
secret can be reversed by hashing candidate PatientIDs. The embedded runtime (one host, results in a folder)
and the tests fall back to the documented ``identity.DEV_KEY_SECRET``."""

from __future__ import annotations

import logging

from pydantic import SecretStr

from neuroflow.core.config import NeuroflowSettings
from neuroflow.core.identity import DEV_KEY_SECRET, use_site_secret

log = logging.getLogger(__name__)

MISSING_SECRET = ("no site key secret: set NEUROFLOW_KEYS__SECRET or NEUROFLOW_KEYS__SECRET_FILE (a file "
                  "readable by the service only, e.g. a mounted Kubernetes Secret) to a long random value, the same "
                  "on every service of the site; pseudonymous study and patient keys are keyed with it")


class MissingSiteSecret(RuntimeError):
    """The distributed runtime was started without the site's key secret."""


def configured_secret(settings: NeuroflowSettings) -> SecretStr | None:
    """The site's key secret, None when none is set (an empty value counts as none)."""
    secret = settings.keys.secret
    return secret if secret is not None and secret.get_secret_value() else None


def install_site_secret(settings: NeuroflowSettings, *, distributed: bool) -> None:
    """Key this process's pseudonyms with the site's secret; ``distributed``: refuse (MissingSiteSecret) to go
    on without one or with the development one, else fall back to the development secret."""
    secret = configured_secret(settings)
    if secret is not None and secret.get_secret_value() == DEV_KEY_SECRET.get_secret_value() and distributed:
        raise MissingSiteSecret("the site key secret is the public development one; " + MISSING_SECRET)
    if secret is None:
        if distributed:
            raise MissingSiteSecret(MISSING_SECRET)
        log.debug("no site key secret set: keys use the development secret (embedded runtime)")
        secret = DEV_KEY_SECRET
    use_site_secret(secret)
