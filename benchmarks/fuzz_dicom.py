"""Coverage-guided fuzzing (atheris/libFuzzer) of the path from received bytes to a model input tensor.

The target does to each input what the appliance does to a received file:
the Part 10 header walk and identity check of ingest
(:func:`runtime.ingest.part10.read_header`, as ``store_part10`` and the SCP
call it), the spool file read under :class:`runtime.decode.DecodeLimits`
(:func:`runtime.decode.read_instance`), then decoding and preprocessing
(:func:`sdk.preprocessing.preprocess`) under the reference model's spec and
two variants that reach the code paths it does not (the dataset's own VOI,
no window, NHWC, z-score). The spec is picked by the input's length, so an
input always takes the same path.

An input may be refused with a :class:`~sdk.errors.DicomInputError` or a
:class:`~sdk.errors.PreprocessingError`: that is the design. Anything else is
a crash: another exception, a tensor of the wrong shape, dtype or with NaN or
infinity; so are an input that takes longer than ``--timeout`` seconds (a
hang) and a process that grows past ``--rss-limit-mb`` (a memory blow-up).
libFuzzer writes the input that did it under ``--artifacts``.

The seed corpus (pydicom's bundled test files and a few phantoms, plain and
compressed) is written at run time into an empty corpus folder; nothing is
committed. Long run (see docs/reliability.md)::

    python -m benchmarks.fuzz_dicom --seconds 3600 --corpus build/fuzz/corpus

Reproduce a crash: ``python -m benchmarks.fuzz_dicom --corpus DIR path/to/crash-...``
(libFuzzer runs the files given and exits).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from sdk.preprocess_spec import PreprocessSpec

__all__ = ["check_bytes", "fuzz_specs", "main", "write_seed_corpus"]

logger = logging.getLogger(__name__)

# The modules on the path, instrumented for coverage (pydicom's parser and pixel handlers included).
_INSTRUMENTED = ("runtime.decode", "runtime.ingest", "runtime.spool", "sdk.preprocessing", "pydicom")

# pydicom test files that exist offline in every pydicom 3 install: greyscale images in every
# encoding the appliance decodes, multi-frame dose grids, broken and odd files.
_PYDICOM_SEEDS = (
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_padded.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_truncated.dcm",
    "JPEG2000.dcm",
    "JPEG2000-embedded-sequence-delimiter.dcm",
    "JPEG-lossy.dcm",
    "JPGExtended.dcm",
    "JPEGLSNearLossless_08.dcm",
    "JPEGLSNearLossless_16.dcm",
    "693_J2KI.dcm",
    "image_dfl.dcm",
    "liver_1frame.dcm",
    "rtdose_1frame.dcm",
    "rtdose_rle_1frame.dcm",
    "rtdose.dcm",
    "rtdose_rle.dcm",
    "ExplVR_BigEndNoMeta.dcm",
    "ExplVR_LitEndNoMeta.dcm",
    "no_meta_group_length.dcm",
    "meta_missing_tsyntax.dcm",
    "nested_priv_SQ.dcm",
    "UN_sequence.dcm",
    "badVR.dcm",
    "SC_rgb_small_odd.dcm",
    "SC_rgb_rle.dcm",
)
_MAX_SEED_BYTES = 48 * 1024
_MODALITIES = ["CT", "MR", "CR", "DX", "MG", "OT", "PT", "NM", "US", "XA", "RF", "RTDOSE", "SC"]


def fuzz_specs() -> list[PreprocessSpec]:
    """The specs inputs are preprocessed under: the reference model's, then two variants.

    The reference spec accepts CT only; the fuzzer's specs accept every
    greyscale modality the seeds carry, so that an MR seed reaches the decoder
    rather than stopping at the modality check.
    """
    from sdk.model_config import load_model_config
    from sdk.preprocess_spec import Normalization
    from sdk.reference_model import config_path

    reference = load_model_config(config_path()).preprocessing.model_copy(update={"modalities": _MODALITIES})
    dataset_voi = reference.model_copy(
        update={
            "window": "voi_lut",
            "size": (48, 80),
            "channels": 3,
            "layout": "NHWC",
            "normalization": Normalization(mode="zscore", mean=0.5, std=0.25),
        }
    )
    unwindowed = reference.model_copy(update={"window": None, "rescale": False, "size": (512, 7)})
    return [reference, dataset_voi, unwindowed]


def check_bytes(data: bytes, workdir: Path, specs: Sequence[PreprocessSpec]) -> np.ndarray | None:
    """Take ``data`` from received bytes to a tensor as the appliance does; raise on anything unexpected.

    Returns:
        The tensor, or ``None`` when the input was refused with a
        DicomInputError or a PreprocessingError (the designed outcome for bad input).

    Raises:
        AssertionError: the tensor has the wrong shape or dtype, or holds NaN or infinity.
        Exception: any other exception from the path is a crash, propagated as is.
    """
    import numpy as np

    from runtime.decode import DecodeLimits, read_instance
    from runtime.ingest.part10 import read_header
    from sdk.errors import DicomInputError, PreprocessingError
    from sdk.preprocessing import preprocess

    limits = DecodeLimits()
    # Warnings are not errors on the appliance (pydicom warns about many odd values); keep it so here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            read_header(data, max_inflated_bytes=limits.max_bytes).identity()
        except DicomInputError:
            return None
        path = workdir / "instance.dcm"
        path.write_bytes(data)
        spec = specs[len(data) % len(specs)]
        try:
            ds = read_instance(path, limits)
            tensor = preprocess(ds, spec)
        except (DicomInputError, PreprocessingError):
            return None
    frames = tensor.shape[0]
    assert frames >= 1 and tensor.shape == spec.input_shape(frames), f"tensor shape {tensor.shape}"
    assert tensor.dtype == np.float32, f"tensor dtype {tensor.dtype}"
    assert bool(np.isfinite(tensor).all()), "tensor holds NaN or infinity"
    return tensor


def write_seed_corpus(out: Path) -> int:
    """Write the seed inputs into ``out``: pydicom's bundled files and phantoms, plain and compressed.

    Returns:
        The number of files written.
    """
    import pydicom.data
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

    from sdk.testing import PhantomSpec, generate_series

    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for name in _PYDICOM_SEEDS:
        try:
            source = pydicom.data.get_testdata_file(name)
        except (ValueError, OSError):  # a file a future pydicom no longer bundles
            source = None
        if source is None or os.path.getsize(source) > _MAX_SEED_BYTES:
            continue
        (out / f"pydicom-{name}").write_bytes(Path(source).read_bytes())
        count += 1
    series = generate_series(PhantomSpec(rows=64, columns=64, slices=2, noise_hu=5.0), seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for index, ds in enumerate(series.datasets):
            ds.save_as(out / f"phantom-{index}-plain.dcm", enforce_file_format=True)
            count += 1
        variants = {"rle": RLELossless, "jpegls": JPEGLSLossless, "j2k": JPEG2000Lossless}
        for suffix, syntax in variants.items():
            ds = series.datasets[0].copy()
            try:
                ds.compress(syntax)
            except (RuntimeError, ValueError, ImportError) as exc:  # an encoder plugin not installed
                logger.warning("no %s seed: %s", suffix, exc)
                continue
            ds.save_as(out / f"phantom-{suffix}.dcm", enforce_file_format=True)
            count += 1
        ds = series.datasets[1].copy()
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.VOILUTFunction = "SIGMOID"
        ds.save_as(out / "phantom-monochrome1-sigmoid.dcm", enforce_file_format=True)
        count += 1
    return count


def _instrumented_imports() -> None:
    """Import the path's modules under atheris's coverage instrumentation (before anything else imports them)."""
    import atheris

    already = [name for name in _INSTRUMENTED if name in sys.modules]
    if already:
        logger.warning("imported before instrumentation, so not coverage-guided: %s", already)
    with atheris.instrument_imports(include=list(_INSTRUMENTED)):
        import pydicom
        import pydicom.pixels  # noqa: F401

        import runtime.decode
        import runtime.ingest.part10  # noqa: F401
        import sdk.preprocessing  # noqa: F401


def main(argv: Sequence[str] | None = None) -> None:
    """Run the fuzzer (see the module docstring); extra arguments go to libFuzzer (e.g. ``-runs=1000``)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fuzz_dicom", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60, help="total fuzzing time (libFuzzer -max_total_time)")
    parser.add_argument("--corpus", type=Path, required=True, help="corpus folder; seeded when empty")
    parser.add_argument("--artifacts", type=Path, default=Path("build/fuzz/artifacts"), help="where crashes go")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take before it is a hang")
    parser.add_argument("--rss-limit-mb", type=int, default=2048, help="memory beyond which the run is a blow-up")
    parser.add_argument("--max-len", type=int, default=_MAX_SEED_BYTES, help="largest input libFuzzer makes")
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)  # it logs every refused input; that is the point here

    _instrumented_imports()
    import atheris

    specs = fuzz_specs()
    if not args.corpus.is_dir() or not any(args.corpus.iterdir()):
        logger.info("seeded %d input(s) into %s", write_seed_corpus(args.corpus), args.corpus)
    args.artifacts.mkdir(parents=True, exist_ok=True)
    shm = Path("/dev/shm")
    workdir = Path(tempfile.mkdtemp(prefix="medge-fuzz-", dir=shm if shm.is_dir() else None))

    def one_input(data: bytes) -> None:
        check_bytes(data, workdir, specs)

    reproducing = any(not arg.startswith("-") for arg in rest)  # files given: run them, do not fuzz
    libfuzzer = [
        sys.argv[0],
        f"-timeout={args.timeout}",
        f"-rss_limit_mb={args.rss_limit_mb}",
        f"-max_len={args.max_len}",
        f"-artifact_prefix={args.artifacts}/",
        "-print_final_stats=1",
        *rest,
    ]
    if not reproducing:
        libfuzzer += [f"-max_total_time={args.seconds}", str(args.corpus)]
    atheris.Setup(libfuzzer, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
