"""Reading and cutting video: decode, the one analysis pass, shot detectors, the clip planner, H.264 clips."""
