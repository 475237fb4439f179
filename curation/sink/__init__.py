"""The dataset sink: shards written where clips are made (shards), committed by the driver (writer)."""
