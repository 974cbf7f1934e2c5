"""An OpenAI-compatible upstream LLM simulator.

A real HTTP server speaking the OpenAI Chat Completions protocol (``/v1/models``,
``/v1/chat/completions`` with and without streaming, tool calls), whose replies are
decided deterministically from the conversation by :mod:`services.llm_sim.replies`.
Tests and load runs use it as a stand-in for a real provider: same wire format, same
error shapes, configurable latency and token rate, no network and no cost.
"""
