"""Exceptions raised by msjoe. Every bad input maps to one specific class with a message that names the file."""


class MsjoeError(Exception):
    """Base class of all msjoe errors."""


# --- video input -------------------------------------------------------------------------------------------
class VideoError(MsjoeError):
    """A video file cannot be used."""


class VideoNotFoundError(VideoError, FileNotFoundError):
    """The path does not exist or is not a file."""


class NotAVideoError(VideoError):
    """The file is not a media container FFmpeg can open."""


class NoVideoStreamError(VideoError):
    """The container opens but holds no video stream (e.g. audio only)."""


class EmptyVideoError(VideoError):
    """The video stream holds no decodable frame (zero length)."""


class CorruptVideoError(VideoError):
    """Decoding failed part-way: truncated or damaged data."""


class UnsupportedCodecError(VideoError):
    """The video stream's codec has no decoder in this FFmpeg build."""


class DecoderCrashedError(VideoError):
    """The worker process decoding the video died (a crash in FFmpeg on this file, or killed for lack of memory)."""


class DecodingWorkersDiedError(MsjoeError):
    """Indexing's decoding worker processes kept dying with no progress (memory too short for that many workers,
    or FFmpeg crashing on file after file): indexing stops instead of starting new workers forever."""


# --- feature cache -----------------------------------------------------------------------------------------
class CacheError(MsjoeError):
    """The feature cache cannot be read or written (the entry itself is rebuilt, not reported).

    ``problem`` is what went wrong; ``remedy``, when the fix is to choose another folder, says how in Python
    (``FeatureCache(root=...)``); the command line says it with its own options instead.
    """

    def __init__(self, problem: str, *, remedy: str | None = None) -> None:
        super().__init__(f"{problem}. {remedy}" if remedy else problem)
        self.problem = problem
        self.remedy = remedy


# --- models ------------------------------------------------------------------------------------------------
class ModelLoadError(MsjoeError):
    """A model or processor could not be loaded from a Hugging Face id or a local folder."""


class NonFiniteLossError(MsjoeError):
    """A training loss (or gradient norm) came out NaN or infinite; the optimiser was not stepped.

    ``step`` is the update that failed (1-based) and ``batch`` what the runner saves for inspection (item ids,
    rollouts, statistics: anything picklable by ``torch.save``).
    """

    def __init__(self, message: str, *, step: int, batch: object = None) -> None:
        super().__init__(message)
        self.step = step
        self.batch = batch
