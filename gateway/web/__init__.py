"""The operator's live view: the page (:mod:`.page`) and its throttled updates (:mod:`.live`)."""
