"""Procedurally drawn fundus photographs as a source: the default data of demos and tests."""

from __future__ import annotations

from PIL import Image

from fundus_lit.core.errors import DataError
from fundus_lit.data.records import FundusRecord
from fundus_lit.data.sources.base import Source


class SyntheticSource(Source):
    """Procedurally drawn fundus photographs, in memory: the default data of demos and tests.

    Args:
        n: Number of images.
        size: Side of the square images in pixels.
        seed: Generator seed; the same seed gives the same dataset on every machine.
        sites: Number of camera styles, each a separate dataset name.
        offset: Index of the first image, so train/val/test can be disjoint draws of one seed.
        cache: Keep drawn images in memory (per loader worker), so later epochs do not redraw
            them; n * size * size * 3 bytes at most per worker.
        reports: Give every record a free-text report (``text``) and multi-hot ``labels``, as a
            report dataset would, so report-supervised recipes run without real reports.
        label_names: Label vocabulary of ``labels`` (see
            :func:`fundus_lit.data.labels.label_vocabulary`); None = every knowledge category.
        masks: Give every record its lesion mask (drawn with the image), for dense transfer
            evaluation.
        captions: Give every record a long atlas-style caption (``text``), as an image-caption
            dataset (MM-Retinal) would, for two-stream recipes' expert stream; cannot be combined
            with ``reports``.
    """

    def __init__(
        self,
        n: int = 512,
        size: int = 256,
        seed: int = 0,
        sites: int = 2,
        offset: int = 0,
        cache: bool = True,
        reports: bool = False,
        label_names: list[str] | None = None,
        masks: bool = False,
        captions: bool = False,
    ) -> None:
        if reports and captions:
            raise ValueError("SyntheticSource: reports and captions both set the text; pick one")
        self.n, self.size, self.seed, self.sites, self.offset = n, size, seed, sites, offset
        self.cache, self.masks, self.captions = cache, masks, captions
        self.reports = reports
        self.label_names = list(label_names) if label_names is not None else None
        self._synth = None
        self._images: dict[int, Image.Image] = {}
        self._masks: dict[int, Image.Image] = {}

    def __repr__(self) -> str:
        extra = ", reports=True" if self.reports else (", captions=True" if self.captions else "")
        return (
            f"SyntheticSource(n={self.n}, size={self.size}, seed={self.seed}, sites={self.sites}"
            f"{extra})"
        )

    @property
    def synth(self):
        if self._synth is None:  # built lazily: cheap to pickle into workers
            from fundus_lit.synthetic import FundusSynth

            self._synth = FundusSynth(seed=self.seed, size=self.size, sites=self.sites)
        return self._synth

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_synth": None, "_images": {}, "_masks": {}}

    def load(self) -> list[FundusRecord]:
        if self.n <= 0:
            raise DataError(f"SyntheticSource needs n > 0, got n={self.n}")
        report_of, vocabulary = None, None
        if self.reports:  # lazy: the label tools pull in the knowledge dictionary
            from fundus_lit.data.labels import label_vocabulary, multi_hot
            from fundus_lit.synthetic import synthetic_report as report_of

            vocabulary = label_vocabulary(self.label_names)
        caption_of = None
        if self.captions:
            from fundus_lit.synthetic.atlas import atlas_caption as caption_of
        # few distinct category lists exist, and multi_hot re-keys the vocabulary on every call
        vectors: dict[tuple[str, ...], tuple[float, ...]] = {}
        records = []
        for i in range(self.offset, self.offset + self.n):
            site, categories, attributes = self.synth.labels_of(i)
            text = labels = None
            if report_of is not None:
                key = tuple(categories)
                if key not in vectors:
                    vectors[key] = multi_hot(key, vocabulary)
                text, labels = report_of(self.synth, i), vectors[key]
            if caption_of is not None:
                text = caption_of(self.synth, i)
            records.append(
                FundusRecord(
                    image=f"synthetic:{i}",
                    dataset=site,
                    categories=tuple(categories),
                    attributes=tuple(attributes),
                    text=text,
                    labels=labels,
                    origin=f"synthetic seed={self.seed} index={i}",
                    mask=f"synthetic:{i}" if self.masks else None,
                )
            )
        return records

    def _draw(self, index: int) -> tuple[Image.Image, Image.Image | None]:
        """Image and (with ``masks``) lesion mask of one index, drawn once: a mask costs the
        whole drawing, so it is made with the image, and both are cached together."""
        if index in self._images:
            return self._images[index], self._masks.get(index)
        sample = self.synth.sample(index, with_mask=self.masks)
        image, mask = Image.fromarray(sample.image), None
        if sample.lesion_mask is not None:
            mask = Image.fromarray((sample.lesion_mask > 0).astype("uint8") * 255, mode="L")
        if self.cache:
            self._images[index] = image
            if mask is not None:
                self._masks[index] = mask
        return image, mask

    def open_image(self, record: FundusRecord) -> Image.Image:
        return self._draw(int(record.image.split(":", 1)[1]))[0]

    def open_mask(self, record: FundusRecord) -> Image.Image:
        if record.mask is None:
            return super().open_mask(record)
        mask = self._draw(int(record.mask.split(":", 1)[1]))[1]
        assert mask is not None  # records get a mask reference only when masks are drawn
        return mask
