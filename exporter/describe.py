"""A human-readable summary of an artifact (printed by ``adrank export``)."""

from __future__ import annotations

from adrank.core.artifact import Artifact


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def describe(art: Artifact) -> str:
    """Kind, rank, k, fields by role, n_features, per-array bytes, version and file size."""
    mf = art.manifest
    schema = art.schema

    def fields(role):
        return ", ".join(f.name + (f"[{f.max_values}]" if f.type == "multi" else "")
                         for f in schema.fields if f.role == role) or "-"

    lines = [
        f"artifact   {art.path}  ({_size(art.nbytes)}, {art.nbytes} bytes)",
        f"version    {art.version}",
        f"model      kind={mf['kind']} rank={mf['rank']} k={mf['embed_dim']} target={mf['target']} "
        f"embedding={mf['embedding']['type']}",
        f"features   n_features={mf['n_features']} m={schema.m} "
        f"(context {schema.m_context}, item {schema.m - schema.m_context})",
        f"context    {fields('context')}",
        f"item       {fields('item')}",
    ]
    if mf["kind"] == "pruned":
        cc, ci, ii = mf["pair_blocks"]
        lines.append(f"pairs      {mf['n_pairs']} kept (context x context {cc}, context x item {ci}, "
                     f"item x item {ii})")
    emb = mf["embedding"]
    if emb.get("type") == "codebook":
        mb = emb.get("paper_mb", {})
        lines.append(f"codebooks  {emb.get('method')} D={emb['D']} K={emb.get('K')} bits={emb.get('bits')} "
                     f"dense fields: {', '.join(emb.get('dense_fields', [])) or '-'}")
        lines.append(f"memory     embedding_mb={mb.get('embedding_mb', float('nan')):.3f} (paper-style) | stored "
                     f"embedding arrays {emb.get('stored_bytes')} bytes | whole file {art.nbytes} bytes")
    cal = mf.get("calibration")
    if cal is not None:
        fitted = cal.get("fitted_on") or {}
        how = f"a={cal['a']:.6g} b={cal['b']:.6g}" if cal["method"] == "platt" else f"{len(cal['x'])} knots"
        lines.append(f"calibration {cal['method']} {how}, fitted on {fitted.get('rows')} validation rows: "
                     f"logloss {fitted.get('logloss_raw')} -> {fitted.get('logloss_calibrated')}")
    lines.append("arrays")
    for name, a in sorted(art.arrays.items()):
        lines.append(f"  {name:<18} {a.dtype.name:<8} {str(tuple(a.shape)):<16} {_size(a.nbytes):>10}")
    return "\n".join(lines)
