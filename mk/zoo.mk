# Retrain and re-measure the demo zoo (model_store/demo) from scratch, in dependency order. Included by the Makefile.
# Each step is resumable (state under runs/) and writes its model card; ~145 min on 2 CPU cores, zoo-eval ~35 more.
ZOO_BIN := $(BIN)/faceedit

.PHONY: zoo zoo-eval

zoo: install
	# The scorer first: the generator trains with it as a critic, and every later step is measured by it.
	$(ZOO_BIN) train scorer --n-train 28000 --steps 4400 --seed 0 --n-eval 2000 --workers 2 --threads 1
	# The shipped generator's run as it happened: planned for 4,500 steps, extended to 6,000 at step 3,250.
	$(ZOO_BIN) train generator --steps 4500 --stop-at-step 3250 --threads 2 --work-dir runs/generator
	$(ZOO_BIN) train generator --steps 6000 --threads 2 --work-dir runs/generator
	# The shipped encoder's run stopped on an 18 min budget at step 1,986; the step makes it machine-independent.
	$(ZOO_BIN) train encoder --steps 4000 --stop-at-step 1986 --work-dir runs/encoder
	$(ZOO_BIN) train clip --threads 1 --time-budget-min 16
	# Text edits' CLIP (models.yaml text_clip): a 45 min budget planned its run down to 1,992 steps.
	$(ZOO_BIN) train clip --out model_store/demo/text_clip.safetensors --conv-stem --contrast-fraction 0.5 \
		--pair-weight 1 --fact-weight 4 --faces-per-style 4000 --steps 1992 --time-budget-min 45 --threads 2
	# The same recipe run to 4,000 steps (46 min); text edits read both as one ensemble (models.yaml text_clip).
	$(ZOO_BIN) train clip --out model_store/demo/text_clip_long.safetensors --conv-stem --contrast-fraction 0.5 \
		--pair-weight 1 --fact-weight 4 --faces-per-style 4000 --steps 4000 --time-budget-min 0 --threads 2
	$(ZOO_BIN) train boundary --n 20000
	$(ZOO_BIN) train ganspace --n 20000 --components 10
	$(MAKE) zoo-eval

# The metrics in the model cards and the figures in docs/ (what the README shows).
zoo-eval: install
	$(ZOO_BIN) eval zoo --docs docs/zoo --json docs/zoo/metrics.json --write-cards
	$(ZOO_BIN) eval edits --n 192 --record --json model_store/demo/boundaries/edit_quality.json --docs docs/edits
	$(ZOO_BIN) eval adaptation --docs docs/adaptation
	# Text edits: the channel relevance (~15 min) is exported for the worker as well as measured.
	$(ZOO_BIN) eval text --n 192 --threads 2 --strength 2.5 --threshold 0.1 --docs docs/text \
		--json docs/text/text_edits.json --export model_store/demo/relevance.safetensors
	$(ZOO_BIN) eval inversion --faces 3 --astronaut --threads 2 --json docs/inversion/inversion.json
	$(BIN)/python examples/photo_edit.py --out docs/photo_edit.png
