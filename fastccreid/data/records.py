"""Typed records shared by every stage: dataset parsers produce them, samplers and loaders consume them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ImageRecord:
    """One image: its path and its labels (pid, camera id, clothes id)."""

    path: str
    pid: int
    camid: int
    clothes_id: int


@dataclass
class ReIDDataset:
    """A parsed dataset. ``query``/``gallery`` are the evaluation sets; PRCC also has ``val``,
    ``query_same`` (same clothes, camera B) and ``query_diff`` (clothes changed, camera C), and its
    ``query`` is ``query_diff``."""

    name: str
    root: str
    train: list[ImageRecord]
    query: list[ImageRecord]
    gallery: list[ImageRecord]
    num_train_pids: int
    num_train_clothes: int
    val: list[ImageRecord] = field(default_factory=list)
    query_same: list[ImageRecord] = field(default_factory=list)
    query_diff: list[ImageRecord] = field(default_factory=list)
    # False where the layout has no clothes labels for its test sets (clothes_id is then the pid): a clothes-changing
    # protocol cannot be evaluated on it (``fastccreid data check`` says so).
    clothes_labelled: bool = True

    @property
    def num_train_imgs(self) -> int:
        return len(self.train)

    def eval_queries(self) -> dict[str, list[ImageRecord]]:
        """The query sets evaluated for this dataset, by setting name (PRCC: same-clothes and clothes-changing)."""
        if self.query_same or self.query_diff:
            return {"same-clothes": self.query_same, "clothes-changing": self.query_diff}
        return {"query": self.query}

    def summary(self) -> str:
        """A torchreid-style statistics table."""

        def row(name: str, recs: list[ImageRecord]) -> str:
            pids = len({r.pid for r in recs})
            clothes = len({(r.pid, r.clothes_id) for r in recs})
            cams = len({r.camid for r in recs})
            return f"  {name:<12}| {pids:6d} | {len(recs):8d} | {clothes:8d} | {cams:6d}"

        lines = [
            f"=> {self.name} loaded from {self.root}",
            "  subset      |   #ids |  #images | #clothes |  #cams",
            "  " + "-" * 52,
            row("train", self.train),
        ]
        if self.val:
            lines.append(row("val", self.val))
        if self.query_same or self.query_diff:
            lines.append(row("query_same", self.query_same))
            lines.append(row("query_diff", self.query_diff))
        else:
            lines.append(row("query", self.query))
        lines.append(row("gallery", self.gallery))
        return "\n".join(lines)
