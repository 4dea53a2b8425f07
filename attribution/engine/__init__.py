"""One batch (decode, align-released events, apply, state write) and the tally feed: no Kafka client here."""
