"""The declared schema of every public data set: fields, types, and the context/item split.

Context fields come first (``C``), item fields last (``I``), as ``adrank.core.schema`` requires.
The split decides what the service computes once per request (context) and what it
computes per candidate ad (item), so it is chosen from what each column describes.

Criteo (label, I1-I13 integer counts, C1-C26 hashed categoricals)
    The columns are anonymised: nobody outside Criteo knows which describe the user/page and
    which the ad (the DPLR-FwFM paper, Sec. 5.2, says the same and sweeps 10-30 context
    fields).  We choose **context = I1-I13 + C1-C13 (26 fields), item = C14-C26 (13 fields)**:
    a split in the middle of the paper's sweep, the 13 count features on the context side
    (counts are the typical user/page statistics of display-ad logs) and half of the
    categoricals on each side, so per-candidate work covers a third of the fields.  The
    choice is a convention for benchmarks, not a claim about Criteo's semantics.
    The integers are binned by ``adrank.core.preprocess.numeric_token`` (floor(ln(x)^2) for x > 2).

Avazu (id dropped; ``hour`` YYMMDDHH expanded to hour of day and day of week)
    Context: the time, ``C1``, the site (id, domain, category), the app (id, domain,
    category) and the device (id, ip, model, type, connection type) — all known before any
    ad is chosen.  Item: ``banner_pos`` and the anonymised ad-side columns ``C14``-``C21``
    (C14 is the creative, C17 the ad group, C18-C21 ad attributes).

MovieLens-1M (ratings joined with users and movies; target = the rating, regression)
    Context: the user (id, gender, age, occupation, zip code) and the time of the rating
    (year, month, day of week, hour — the paper's expansion of the timestamp, Sec. 5.1).
    Item: the movie (id, and its genres as one multi-valued field of at most 6 values whose
    embedding is the mean, Sec. 3.2).  11 fields, as in the paper.  Titles are not used.
"""

from __future__ import annotations

from adrank.core.schema import Field, Schema

CRITEO_INT = tuple(f"I{i}" for i in range(1, 14))
CRITEO_CAT = tuple(f"C{i}" for i in range(1, 27))
CRITEO_CONTEXT_CATS = CRITEO_CAT[:13]

CRITEO = Schema(
    "criteo",
    tuple(Field(n, "numeric", "context") for n in CRITEO_INT)
    + tuple(Field(n, "categorical", "context") for n in CRITEO_CONTEXT_CATS)
    + tuple(Field(n, "categorical", "item") for n in CRITEO_CAT[13:]),
    target="binary",
    label="label",
)

AVAZU_CONTEXT = (
    "hour_of_day", "day_of_week", "C1",
    "site_id", "site_domain", "site_category",
    "app_id", "app_domain", "app_category",
    "device_id", "device_ip", "device_model", "device_type", "device_conn_type",
)
AVAZU_ITEM = ("banner_pos", "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21")
# Columns of Avazu's train.csv (``id`` is dropped, ``hour`` expanded).
AVAZU_COLUMNS = ("id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category",
                 "app_id", "app_domain", "app_category", "device_id", "device_ip", "device_model",
                 "device_type", "device_conn_type", "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21")

AVAZU = Schema(
    "avazu",
    tuple(Field(n, "categorical", "context") for n in AVAZU_CONTEXT)
    + tuple(Field(n, "categorical", "item") for n in AVAZU_ITEM),
    target="binary",
    label="click",
)

MOVIELENS_GENRES_MAX = 6

MOVIELENS = Schema(
    "movielens",
    (
        Field("user_id", "categorical", "context"),
        Field("gender", "categorical", "context"),
        Field("age", "categorical", "context"),
        Field("occupation", "categorical", "context"),
        Field("zip", "categorical", "context"),
        Field("year", "categorical", "context"),
        Field("month", "categorical", "context"),
        Field("day_of_week", "categorical", "context"),
        Field("hour", "categorical", "context"),
        Field("movie_id", "categorical", "item"),
        Field("genres", "multi", "item", max_values=MOVIELENS_GENRES_MAX),
    ),
    target="regression",
    label="rating",
)
