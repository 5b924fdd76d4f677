"""The evaluation harness behind `python -m open_instruct.flip_eval` and `flip bon`: RewardBench-style
best-of-N sets (reward_bench), picking the best of N candidates (best_of_n), and the report (report)."""
