"""Artifact + kernels -> ``rank(context, ads, top_k)``.  No HTTP here, and never torch.

A Ranker owns one loaded model: its manifest, its arrays (in private memory), the preprocessing
that travelled with it (:class:`RequestEncoder`) and the scorer for its kind
(``service.kernels.registry``).  ``rank`` encodes the request, scores every candidate with the
context part computed once, and returns ``(ad id, score)`` sorted by score, best first, ties in
input order.  The score is the click probability ``sigmoid(raw)`` for ``target == "binary"``
and the raw prediction for regression; ordering uses the raw score (the sigmoid is monotone
but saturates to 1.0 in float64, which would create false ties).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from adrank.core.calibration import of_manifest
from adrank.core.preprocess import Preprocessor
from service.encode import RequestEncoder, RequestError
from service.fastpath import FastPath
from service.kernels.registry import make_scorer
from service.link import Calibration, order, reply_scores, sigmoid  # noqa: F401 (sigmoid: re-exported)


class Ranker:
    def __init__(self, manifest: dict, arrays: dict, version: str = "test", name: str | None = None,
                 preprocessor: Preprocessor | None = None, nbytes: int | None = None, **scorer_options):
        self.manifest = manifest
        self.arrays = arrays
        self.version = version
        self.kind = manifest["kind"]
        self.rho = manifest.get("rank")  # the manifest's rank (``rank`` is the method)
        self.target = manifest.get("target") or manifest["schema"].get("target", "binary")
        self.calibration = of_manifest(manifest)  # the artifact's map, None: sigmoid(raw)
        self.ctr_map = Calibration.of(self.calibration)  # the same map, as service/link.py applies it
        self.preprocessor = preprocessor or Preprocessor.from_state(manifest["preprocess"], arrays)
        self.schema = self.preprocessor.schema
        self.name = name or self.schema.name
        self.encoder = RequestEncoder(self.preprocessor)
        self.fastpath = FastPath(self.encoder)  # raw /v1/rank body bytes -> ids (service/fastpath.py)
        self.scorer = make_scorer(manifest, arrays, **scorer_options)
        self.embedding = self.scorer.embedding  # "dense" or "codebook" (decoded inside the kernels)
        self.nbytes = int(nbytes if nbytes is not None else sum(np.asarray(a).nbytes for a in arrays.values()))

    # --- construction --------------------------------------------------------------------
    @classmethod
    def load(cls, path, name: str | None = None, *, huge_pages: bool = True, timeout: float = 60.0,
             **scorer_options) -> Ranker:
        """Read an artifact file into private memory, verified; ``name`` defaults to the file's stem.
        ``scorer_options`` go to the scorer (service/kernels/base.py; a served model gets them
        from the serving settings).  Nothing stays mapped from the file (service/modelfile.py):
        replacing, truncating or deleting it later does not touch this model.  The kernels'
        random-access tables are read into huge-page memory unless ``huge_pages`` is False
        (service/kernels/memory.py); reading gives up after ``timeout`` seconds."""
        from adrank.core.artifact import load_preprocessor
        from service.modelfile import read_owned

        art = read_owned(path, timeout=timeout, huge_pages=huge_pages)
        return cls(art.manifest, art.arrays, version=art.version, name=name or Path(path).stem,
                   preprocessor=load_preprocessor(art), nbytes=art.nbytes, huge_pages=huge_pages,
                   **scorer_options)

    # --- serving -------------------------------------------------------------------------
    def warm(self) -> None:
        """Compile (or load from cache) every kernel, and run the encoder once."""
        self.scorer.warm()
        self.encoder.warm()
        self.fastpath.warm()
        self.rank({}, [{"id": "warm", "features": {}}])

    def rank(self, context: dict, ads: list[dict], top_k: int | None = None) -> list[tuple]:
        """[(ad id, score)] best first (ties in input order), at most ``top_k`` of them."""
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
            raise RequestError("top_k", f"expected a non-negative integer, got {top_k!r}", code="invalid_value")
        ctx = self.encoder.encode_context(context)
        ids, X = self.encoder.encode_ads(ads)
        raw = self.scorer.score(ctx, X)
        rows, out = order(raw, -1 if top_k is None else top_k, self.target == "binary", self.ctr_map)
        return [(ids[i], s) for i, s in zip(rows.tolist(), out.tolist(), strict=True)]

    def predict_encoded(self, X: np.ndarray) -> np.ndarray:
        """Full encoded rows int32[B, S] -> probabilities (binary) or predictions (regression)."""
        return self._link(self.scorer.score_rows(X))

    def info(self) -> dict:
        return {"name": self.name, "version": self.version, "kind": self.kind, "rank": self.rho,
                "embedding": self.embedding, "size_bytes": self.nbytes,
                "calibration": None if self.calibration is None else {
                    **self.calibration.describe(), **(self.manifest["calibration"].get("fitted_on") or {})},
                "fields": [{"name": f.name, "type": f.type, "role": f.role} for f in self.schema.fields]}

    def _link(self, raw: np.ndarray) -> np.ndarray:
        return reply_scores(raw, self.target == "binary", self.ctr_map)

