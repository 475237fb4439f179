"""Near-duplicate clips over a committed dataset: the signals each clip carries (``signals``), finding groups in a
Ray job (``job``), and the record it leaves beside the manifest (``common.contract.read_dedup``)."""
