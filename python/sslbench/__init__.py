"""Python client of sslbench, the evaluation service for self-supervised vision models.

See `sslbench.client` for the whole interface; the common case:

    import sslbench
    client = sslbench.Client()
    study = client.submit("study.yaml")
    client.wait(study.study_id, progress=True)
    df = client.results(study.study_id)
"""

from sslbench.client import STATE_NAMES, Client, SslbenchError, StudyFailed

__version__ = "0.1.0"
__all__ = ["Client", "SslbenchError", "StudyFailed", "STATE_NAMES", "__version__"]
