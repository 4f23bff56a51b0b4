"""Actors: message in, messages out. RouterActor drives requests; shards and drafts come next."""
