from enclavekit.cli import run

run()
