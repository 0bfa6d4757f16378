"""recsys_jax data: interaction-log readers, per-user sequences, leave-one-out splits, the synthetic
default dataset, the ArrayRecord builder and the Grain-ready loader; event logs (actions, surfaces,
ads), conversion attribution, the marketplace simulator and the event dataset builder.

    path = build(SourceSpec("movielens", "ratings.dat"), "out/ml1m", max_seq_len=200)
    ds = load_dataset(path)
    it = ds.train_iterator(batch_size=128, max_len=50)
"""

from recsys_jax.data.attribution import AttributionConfig, apply_attribution, attribute
from recsys_jax.data.builder import SourceSpec, build, dataset_dir, write_dataset
from recsys_jax.data.event_builder import EventSourceSpec, build_events
from recsys_jax.data.events import EventLog, Vocab, events_from_interactions, make_event_log, read_events
from recsys_jax.data.formats import FORMATS, DataFormatError, Interaction, read_interactions, read_items
from recsys_jax.data.loader import RecsysDataset, load_dataset
from recsys_jax.data.marketplace import MarketplaceConfig, MarketplaceData, generate_marketplace
from recsys_jax.data.sequences import IdMap, Sequences, build_sequences, pad_sequence
from recsys_jax.data.splits import SPLITS, eval_example, in_split, train_example
from recsys_jax.data.synthetic import SyntheticConfig, SyntheticData, generate

__all__ = [
    "AttributionConfig", "EventLog", "EventSourceSpec", "MarketplaceConfig", "MarketplaceData", "Vocab",
    "apply_attribution", "attribute", "build_events", "events_from_interactions", "generate_marketplace",
    "make_event_log", "read_events",
    "FORMATS", "SPLITS", "DataFormatError", "IdMap", "Interaction", "RecsysDataset", "Sequences", "SourceSpec",
    "SyntheticConfig", "SyntheticData", "build", "build_sequences", "dataset_dir", "eval_example", "generate",
    "in_split", "load_dataset", "pad_sequence", "read_interactions", "read_items", "train_example", "write_dataset",
]
