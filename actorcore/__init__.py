"""actorcore: a distributed task-and-actor framework on Trio."""
