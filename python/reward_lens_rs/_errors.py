"""The exceptions reward_lens_rs raises. Every message is the Rust library's, naming the file,
field, tensor, line or pair at fault and what was expected."""


class RewardLensError(Exception):
    """Base class of every reward_lens_rs error."""


class ModelError(RewardLensError):
    """The model directory: config.json, weights, tokenizer or chat template."""


class InputError(RewardLensError, ValueError):
    """The data or arguments given: a pairs file line, a field, an option value."""


class SiteError(RewardLensError, ValueError):
    """An activation site name, or an intervention at a site."""


class FileError(RewardLensError, OSError):
    """A file or directory that cannot be read or written."""
