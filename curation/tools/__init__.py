"""Around a job, not part of it: capacity plan, report, inspection, dataset card, clean-clip scoring."""
