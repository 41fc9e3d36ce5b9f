"""The development harness: real Mosquitto brokers on free ports, the stand-in cloud, the raw-socket
load generator and the subprocess helper. Used by the tests, the benchmarks and the local stack."""
