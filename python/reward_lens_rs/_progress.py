"""Progress bars for long calls. The Rust side calls `bar(desc, progress)` once per call and
then the returned callable with (done, total, message); it checks for Ctrl-C at each update."""

from __future__ import annotations


class _Tqdm:
    """A tqdm bar (tqdm.auto: a widget in notebooks, text in a terminal), made at the first
    update so that calls that finish at once show nothing."""

    def __init__(self, desc, tqdm):
        self._desc = desc
        self._tqdm = tqdm
        self._bar = None

    def __call__(self, done, total, message=None):
        if self._bar is None:
            self._bar = self._tqdm(total=total or None, desc=self._desc, leave=False, dynamic_ncols=True)
        bar = self._bar
        if total and bar.total != total:
            bar.reset(total=total)
        if message:
            bar.set_description_str(f"{self._desc}: {message}", refresh=False)
        # update() redraws at most every mininterval, however often the engine reports.
        bar.update(done - bar.n)

    def close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def bar(desc, progress):
    """None/True: a tqdm bar when tqdm is installed, else silent; False: silent; a callable:
    called as progress(done, total, message)."""
    if progress is False:
        return None
    if progress is None or progress is True:
        try:
            import warnings

            with warnings.catch_warnings():
                # Without ipywidgets, tqdm.auto falls back to the text bar with a warning.
                warnings.simplefilter("ignore")
                from tqdm.auto import tqdm
        except ImportError:
            return None
        return _Tqdm(desc, tqdm)
    if callable(progress):
        return progress
    raise TypeError(f"progress: expected True, False, None or a callable, got {progress!r}")
