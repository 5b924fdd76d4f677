"""Test doubles and offline builders: a scripted OpenAI-compatible judge (scripted_judge), tiny models built
without a hub (tiny_models), the small world where a tiny judge and policy trained on CPU can do FLIP's task
(world, world_models), and a cheap smoke-test verifier (verifiers). The product never imports this package;
tests, benchmarks and the offline demo do."""
