"""Third-party chatter kept off the terminal unless asked for (``localcat -v``).

pypdf logs "EOF marker not found" for every damaged PDF, bs4 warns about XML parsed as HTML,
transformers draws a "Loading weights" bar on each model load: LocalCat already reports each
file's outcome in one line, so these only add noise. With ``verbose`` they show as usual.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

NOISY_LOGGERS = ("pypdf", "bm25s", "chromadb", "httpx", "sentence_transformers", "transformers",
                 "huggingface_hub", "urllib3", "filelock")


def quiet_third_party(verbose: bool = False) -> None:
    """Keep third-party logs (below errors), warnings and progress bars off the terminal."""
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
