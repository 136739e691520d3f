"""Stage 1, sources: where records come from (file replay, memory for tests, Kafka), and the file loaders that
offline training, evaluation and replay share."""
