"""tqdm progress bars, silent on DDP ranks other than 0 and when SGAN_NO_PROGRESS=1."""
import os

from tqdm.auto import tqdm


def progress(iterable=None, total=None, desc=None, rank=0, initial=0, unit="it"):
    """A tqdm bar; use ``bar.set_postfix(loss=...)`` for the running loss (speed is shown by tqdm)."""
    disable = rank != 0 or os.environ.get("SGAN_NO_PROGRESS", "0") == "1"
    return tqdm(iterable, total=total, desc=desc, initial=initial, unit=unit, disable=disable,
                dynamic_ncols=True, leave=True)
