# SPDX-License-Identifier: GPL-2.0
# The project's commands. See README.md.

SUITE ?=
CONFIG ?=

.PHONY: demo test series kunit selftest prepare bench

demo:
	@bash harness/demo.sh $(CONFIG)

test:
	@bash harness/test.sh

prepare:
	@bash harness/prepare.sh

series: prepare
	@bash harness/series.sh

kunit: prepare
	@bash harness/kunit.sh $(if $(SUITE),-f '$(SUITE)') $(CONFIG)

selftest: prepare
	@bash harness/selftests.sh $(CONFIG)

bench:
	@bash harness/bench.sh $(or $(RUN_MS),200) $(CONFIG)
	@RFL_PREPARED=1 bash harness/bench-fio.sh $(or $(FIO_S),5) $(or $(FIO_ROUNDS),5) $(CONFIG)
