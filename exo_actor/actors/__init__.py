"""Actors, message in and messages out: ShardActor, RouterActor, DraftActor and RemoteRing.

ShardActor runs this node's layer range; RouterActor schedules requests onto a pipeline; DraftActor
proposes draft tokens for speculative decoding; RemoteRing is the pipeline a router drives when its
shards live on other nodes.
"""
