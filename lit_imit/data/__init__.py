"""Episodes on disk, windows over them, and the DataModule that trains on them."""

from lit_imit.data.datamodule import EpisodeDataModule
from lit_imit.data.datasets import ChunkDataset, compute_stats
from lit_imit.data.episodes import Episode, EpisodeError, EpisodeStore, read_episode, write_episode
from lit_imit.data.samplers import SeededSampler, WeightedStoreSampler

__all__ = [
    "ChunkDataset", "Episode", "EpisodeDataModule", "EpisodeError", "EpisodeStore", "SeededSampler",
    "WeightedStoreSampler", "compute_stats", "read_episode", "write_episode",
]
