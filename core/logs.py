"""Third-party chatter kept off the terminal unless asked for (``localcat -v``).

pypdf logs "EOF marker not found" for every damaged PDF, bs4 warns about XML parsed as HTML,
transformers draws a "Loading weights" bar on each model load: LocalCat already reports each
file's outcome in one line, so these only add noise. With ``verbose`` they show as usual.

Whatever is shown goes through ``RedactingFilter`` (core/redact.py): no URL password in a log line.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

from core.redact import RedactingFilter

NOISY_LOGGERS = ("pypdf", "bm25s", "chromadb", "httpx", "sentence_transformers", "transformers",
                 "huggingface_hub", "urllib3", "filelock")


def install_redaction() -> None:
    """Put ``RedactingFilter`` on every handler there is now, and on the handler of last resort.

    On handlers, not loggers: a logger's filter skips the records its children propagate to it,
    so a third-party logger's record would reach the root's handlers unredacted. Idempotent; call
    it again after something (uvicorn's log config) installs handlers of its own.
    """
    known = logging.Logger.manager.loggerDict.values()
    loggers = [logging.getLogger(), *(lg for lg in known if isinstance(lg, logging.Logger))]
    # With no handler on the way, records go to logging.lastResort (stderr, warnings and up).
    handlers = {*(h for logger in loggers for h in logger.handlers), logging.lastResort}
    for handler in handlers:
        if handler is not None and not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


def quiet_third_party(verbose: bool = False) -> None:
    """Keep third-party logs (below errors), warnings and progress bars off the terminal, and
    secrets out of every log line (``install_redaction``)."""
    install_redaction()
    if verbose:
        os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
        return
    # Read by huggingface_hub and transformers (5.x) when they draw their tqdm bars.
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"bs4(\.|$)")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|torch)(\.|$)")
    if "transformers" in sys.modules:  # imported already: it read the variable at import
        sys.modules["transformers"].utils.logging.disable_progress_bar()
