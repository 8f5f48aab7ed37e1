"""Corrective unlearning: Selective Synaptic Dampening and the manipulated-data scenarios it is measured on."""
