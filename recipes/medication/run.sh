#!/usr/bin/env bash
# SynthASR medication recipe: teach a general-domain RNN-T medication names from synthetic speech
# without forgetting the general domain.
#
#   ./run.sh [--config conf/default.yaml] [--stage N] [--stop-stage M] [--force]
#            [--terms FILE] [--domain-text FILE] [--templates FILE]     (your own domain: docs/your_domain.md)
#
# Every stage calls the synthasr library/CLI; nothing here trains or decodes by itself.
# Outputs: data/<config-name>/ (text, audio, manifests, features, BPE) and exp/<config-name>/
# (checkpoints, decode results, report). A finished stage leaves a .done marker and is skipped on a
# rerun; an interrupted stage resumes where it stopped. --force reruns a stage's commands despite its
# marker; the tools still reuse complete outputs (delete e.g. exp/<config>/<stage>/ to retrain it).
set -euo pipefail

invoked_from=$PWD  # relative --corpus-dir paths are relative to where run.sh was called from
cd "$(dirname "$0")"

stage=0
stop_stage=100
config=conf/default.yaml
force=false
general_corpus=   # librispeech | mini_librispeech: real general-domain speech instead of synthetic
corpus_dir=
terms=        # your own domain (stage 0): term list, domain sentences, carrier templates;
domain_text=  # each overrides its config key domain.{terms,text,templates}
templates=

stage_names=(
  "0:prepare_text:medication names (or your --terms/--domain-text) + carrier sentences, general-domain sentences"
  "1:voices:split TTS voices into disjoint train / held-out test pools"
  "2:tts_general:synthesize general-domain text (train/held-out voices), or with --general-corpus: a local LibriSpeech copy; real-speech test set (evaluation only)"
  "3:tts_medication:synthesize medication text (train voices; held-out voices for dev/test/unseen)"
  "4:fbank:80-dim features (fbank, or Whisper log-mel: features.type) for every manifest"
  "5:bpe:sentencepiece BPE on general-domain training text (the baseline's units)"
  "6:baseline:train the general-domain baseline RNN-T (schedule stage 'general')"
  "7:adapt:multi-stage adaptation: weighted mixing + augmentation + freezing + EWC"
  "8:ablation:ablation stages from the baseline: synthetic-only, +mixing, +augmentation, leave one engine out"
  "9:decode:modified beam search with and without medication hotword biasing; Whisper tiny.en peer row"
  "10:export:pretrained.pt (+ ONNX for sherpa-onnx)"
  "11:report:report.json/md/png/html and RESULTS.md"
)

usage() {
  cat <<EOF
Usage: $0 [options]
  --config FILE      recipe config (default: $config); smoke: conf/smoke.yaml, GPU: conf/gpu.yaml,
                     Conformer from scratch (for real corpora): conf/conformer.yaml
  --stage N          first stage to run (default: $stage)
  --stop-stage M     last stage to run (default: $stop_stage)
  --force            rerun the selected stages even if their .done marker exists (complete
                     outputs are still reused: delete exp/<config>/<stage>/ to retrain a stage)
  --general-corpus C real general-domain speech instead of synthetic: librispeech | mini_librispeech
  --corpus-dir DIR   local copy of that corpus (DIR/LibriSpeech/<part>/... or DIR = .../LibriSpeech);
                     nothing is downloaded. Optional config keys: general_corpus.{train_parts,
                     dev_part,test_part,max_train_hours}
  --terms FILE       your term list instead of the packaged drug lists (one term a line; TAB spoken
                     form, TAB espeak-ng phonemes); config key domain.terms. See docs/your_domain.md
  --domain-text FILE your domain sentences (plain text or JSONL), used as they are and mined for the
                     terms; config key domain.text
  --templates FILE   carrier templates that top the splits up (default: domain.templates,
                     conf/templates/medication.txt). Paths are relative to where run.sh was called
  -h, --help         this message

Stages:
EOF
  local n sname desc
  for s in "${stage_names[@]}"; do
    IFS=: read -r n sname desc <<< "$s"
    printf '  %-4s %-16s %s\n' "$n" "$sname" "$desc"
  done
}

while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage="${2:?--stage needs a value}"; shift 2 ;;
    --stage=*) stage="${1#*=}"; shift ;;
    --stop-stage|--stop_stage) stop_stage="${2:?--stop-stage needs a value}"; shift 2 ;;
    --stop-stage=*|--stop_stage=*) stop_stage="${1#*=}"; shift ;;
    --config) config="${2:?--config needs a value}"; shift 2 ;;
    --config=*) config="${1#*=}"; shift ;;
    --force) force=true; shift ;;
    --general-corpus) general_corpus="${2:?--general-corpus needs a value}"; shift 2 ;;
    --general-corpus=*) general_corpus="${1#*=}"; shift ;;
    --corpus-dir) corpus_dir="${2:?--corpus-dir needs a value}"; shift 2 ;;
    --corpus-dir=*) corpus_dir="${1#*=}"; shift ;;
    --terms) terms="${2:?--terms needs a value}"; shift 2 ;;
    --terms=*) terms="${1#*=}"; shift ;;
    --domain-text) domain_text="${2:?--domain-text needs a value}"; shift 2 ;;
    --domain-text=*) domain_text="${1#*=}"; shift ;;
    --templates) templates="${2:?--templates needs a value}"; shift 2 ;;
    --templates=*) templates="${1#*=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "$0: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
for v in "$stage" "$stop_stage"; do
  [[ "$v" =~ ^[0-9]+$ ]] || { echo "$0: stage numbers must be non-negative integers, got '$v'" >&2; exit 2; }
done
[ -f "$config" ] || { echo "$0: config not found: $config" >&2; exit 2; }
case "$general_corpus" in
  ""|librispeech|mini_librispeech) ;;
  *) echo "$0: --general-corpus must be librispeech or mini_librispeech, got '$general_corpus'" >&2; exit 2 ;;
esac
if [ -n "$general_corpus" ] && [ -z "$corpus_dir" ]; then
  echo "$0: --general-corpus needs --corpus-dir DIR (a local copy; nothing is downloaded)" >&2; exit 2
fi
if [ -z "$general_corpus" ] && [ -n "$corpus_dir" ]; then
  echo "$0: --corpus-dir needs --general-corpus librispeech|mini_librispeech" >&2; exit 2
fi
case "$corpus_dir" in ""|/*) ;; *) corpus_dir=$invoked_from/$corpus_dir ;; esac
for v in terms domain_text templates; do  # options are relative to the caller; config keys to this folder
  case "${!v}" in ""|/*) ;; *) printf -v "$v" '%s' "$invoked_from/${!v}" ;; esac
done

PYTHON=${PYTHON:-python3}
conf() { "$PYTHON" local/conf.py "$config" "$@"; }
"$PYTHON" local/conf.py --check "$config" || exit 2  # unknown keys / wrong types: one-line error

name=$(basename "$config" .yaml)
data=data/$name
exp=exp/$name
mkdir -p "$data" "$exp/log"
schedule=$(conf schedule)
[ -f "$schedule" ] || { echo "$0: $config: schedule file not found: $schedule" >&2; exit 2; }

# Your own domain (stage 0): options first, then the config's domain.* keys.
[ -n "$terms" ] || terms=$(conf domain.terms "")
[ -n "$domain_text" ] || domain_text=$(conf domain.text "")
[ -n "$templates" ] || templates=$(conf domain.templates conf/templates/medication.txt)
domain_args=()
domain_inputs=  # what stage 0 made data/<c>/text from; empty: the packaged drug lists
if [ -n "$terms$domain_text" ]; then
  for f in "$terms" "$domain_text" "$templates"; do
    [ -z "$f" ] || [ -f "$f" ] || { echo "$0: domain input not found: $f" >&2; exit 2; }
  done
  [ -z "$terms" ] || domain_args+=(--terms "$terms")
  [ -z "$domain_text" ] || domain_args+=(--domain-text "$domain_text")
  domain_args+=(--templates "$templates")
  for f in "$terms" "$domain_text" "$templates"; do
    [ -z "$f" ] || domain_inputs+="${f##*/}@$(sha256sum < "$f" | cut -c1-16) "
  done
  domain_inputs=${domain_inputs% }
fi
# A config's outputs are never silently reused for other domain inputs: every later stage would mix them.
domain_record=$data/text/domain_inputs.txt
if [ -f "$exp/.done.0.prepare_text" ] && ! { [ "$force" = true ] && [ "$stage" -eq 0 ]; }; then
  previous=$(cat "$domain_record" 2>/dev/null || true)
  if [ "$previous" != "$domain_inputs" ]; then
    echo "$0: $data/text was made from ${previous:-the packaged drug lists}, not from ${domain_inputs:-the packaged drug lists}:" \
      "use a config of its own (cp conf/terms_example.yaml conf/mine.yaml), or --stage 0 --force to remake it" \
      "(later stages then need --force too)" >&2
    exit 2
  fi
fi

log() {
  local fname=${BASH_SOURCE[1]##*/}
  echo -e "$(date '+%Y-%m-%d %H:%M:%S') ($fname:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"
}

# run_stage N NAME: true if stage N is selected and not yet done. Marks timing for the report.
selected() { [ "$1" -ge "$stage" ] && [ "$1" -le "$stop_stage" ]; }
should_run() {
  local n=$1 sname=$2
  selected "$n" || return 1
  if [ -f "$exp/.done.$n.$sname" ] && [ "$force" = false ]; then
    log "stage $n ($sname): done earlier ($exp/.done.$n.$sname), skipping"
    return 1
  fi
  log "stage $n ($sname): start"
  stage_start=$(date +%s)
  return 0
}
mark_done() {
  local n=$1 sname=$2 secs=$(( $(date +%s) - stage_start ))
  echo "$secs" > "$exp/.done.$n.$sname"
  log "stage $n ($sname): done in ${secs}s"
}

seed=$(conf seed 0)
num_jobs=$(conf tts.num_jobs 2)
engines=$(conf tts.engines | tr ' ' ',')

if should_run 0 prepare_text; then
  $PYTHON local/prepare_text.py --out-dir "$data/text" --seed "$seed" \
    --num-names "$(conf text.num_names)" --unseen-fraction "$(conf text.unseen_fraction)" \
    --num-train "$(conf text.num_med_train)" --num-dev "$(conf text.num_med_dev)" \
    --num-test "$(conf text.num_med_test)" --num-test-unseen "$(conf text.num_med_test_unseen)" \
    --num-general-train "$(conf text.num_general_train)" --num-general-dev "$(conf text.num_general_dev)" \
    --num-general-test "$(conf text.num_general_test)" \
    --general-vocab-size "$(conf text.general_vocab_size 0)" "${domain_args[@]}" 2>&1 | tee "$exp/log/prepare_text.log"
  if [ -n "$domain_inputs" ]; then echo "$domain_inputs" > "$domain_record"; else rm -f "$domain_record"; fi
  mark_done 0 prepare_text
fi

if should_run 1 voices; then
  holdout_args=()
  for h in $(conf tts.holdout ""); do holdout_args+=(--holdout "$h"); done
  exclude_args=()  # voice settings a real-speech recognizer cannot read (measured: local/probe_voices.py)
  for x in $(conf tts.exclude ""); do exclude_args+=(--exclude "$x"); done
  synthasr tts-voices split --engines "$engines" --test-fraction "$(conf tts.test_voice_fraction)" \
    "${holdout_args[@]}" "${exclude_args[@]}" --seed "$seed" \
    --train-out "$data/voices/train_voices.txt" --test-out "$data/voices/test_voices.txt"
  log "voices: $(wc -l < "$data/voices/train_voices.txt") train, $(wc -l < "$data/voices/test_voices.txt") held-out test"
  mark_done 1 voices
fi

# tts PREFIX DOMAIN VOICES_FILE NUM_VOICES [TTS-GEN OPTIONS...]: synthesize data/text/PREFIX.jsonl
# (resumable by itself).
tts() {
  local prefix=$1 domain=$2 voices=$3 nvoices=$4
  shift 4
  synthasr tts-gen "$data/text/$prefix.jsonl" "$data/tts" --domain "$domain" --prefix "$prefix" \
    --engines "$engines" --engine-weights "$(conf tts.engine_weights | tr ' ' ',')" \
    --voices-file "$voices" --num-voices "$nvoices" --num-jobs "$num_jobs" --seed "$seed" \
    --failure-threshold "$(conf tts.failure_threshold 0.05)" "$@" 2>&1 | tee "$exp/log/tts_$prefix.log"
}

# prepare_general: general_{train,dev,test} manifests + text from a local real corpus (resumable: a
# no-op when its outputs are intact; it also rewrites general_*.jsonl if stage 0 replaced them).
prepare_general() {
  local args=(--corpus "$general_corpus" --corpus-dir "$corpus_dir" --out-dir "$data/tts" --text-dir "$data/text"
              --med-names "$data/text/medication_names.txt" --seed "$seed" --num-jobs "$num_jobs")
  local v
  v=$(conf general_corpus.train_parts ""); [ -z "$v" ] || [ "$v" = None ] || args+=(--train-parts "${v// /,}")
  v=$(conf general_corpus.dev_part ""); [ -z "$v" ] || [ "$v" = None ] || args+=(--dev-part "$v")
  v=$(conf general_corpus.test_part ""); [ -z "$v" ] || [ "$v" = None ] || args+=(--test-part "$v")
  v=$(conf general_corpus.max_train_hours ""); [ -z "$v" ] || [ "$v" = None ] || args+=(--max-train-hours "$v")
  $PYTHON local/prepare_general_corpus.py "${args[@]}" 2>&1 | tee -a "$exp/log/prepare_general_corpus.log"
}

# A separate .done marker per general-domain source, so switching source reruns stage 2
# (later stages still need --force: their inputs changed).
general_stage=tts_general
[ -z "$general_corpus" ] || general_stage=general_corpus
if should_run 2 "$general_stage"; then
  if [ -n "$general_corpus" ]; then
    prepare_general
  else
    rm -f "$data/tts/general_domain.txt" "$data/tts/general_corpus_summary.json"  # no real-corpus leftovers
    tts general_train general "$data/voices/train_voices.txt" "$(conf tts.num_train_voices)"
    tts general_dev general "$data/voices/test_voices.txt" "$(conf tts.num_test_voices)"
    tts general_test general "$data/voices/test_voices.txt" "$(conf tts.num_test_voices)"
  fi
  if [ "$(conf real_speech.enabled false)" = true ]; then
    # Real human speech: evaluation only (never trained on, never used to tune data generation).
    real_args=(--out-dir "$data/real" --sources "$(conf real_speech.sources | tr ' ' ',')"
               --max-utterances "$(conf real_speech.max_utterances 0)" --seed "$seed")
    [ "$(conf real_speech.optional true)" = true ] && real_args+=(--optional)
    $PYTHON local/prepare_real_speech.py "${real_args[@]}" 2>&1 | tee "$exp/log/prepare_real_speech.log"
  fi
  mark_done 2 "$general_stage"
fi

if should_run 3 tts_medication; then
  tts med_train medication "$data/voices/train_voices.txt" "$(conf tts.num_train_voices)" \
    --pron-variants "$(conf tts.pron_variants 0)"  # generated pronunciations: training speech only
  for part in med_dev med_test med_test_unseen; do
    tts "$part" medication "$data/voices/test_voices.txt" "$(conf tts.num_test_voices)"
  done
  mark_done 3 tts_medication
fi

# real_cuts: the real-speech test set's manifest when stage 2 made one (it is optional).
real_cuts() { local f=$data/real/general_real_cuts.jsonl.gz; [ -f "$f" ] && echo "$f" || true; }

if should_run 4 fbank; then
  printf 'type: %s\n' "$(conf features.type fbank)" > "$data/features.yaml"
  for part in general_train general_dev general_test med_train med_dev med_test med_test_unseen; do
    synthasr compute-fbank --cuts "$data/tts/${part}_cuts.jsonl.gz" --out-dir "$data/fbank" --prefix "$part" \
      --num-jobs "$num_jobs" --feature-config "$data/features.yaml"
  done
  if [ -n "$(real_cuts)" ]; then
    synthasr compute-fbank --cuts "$(real_cuts)" --out-dir "$data/fbank" --prefix general_real \
      --num-jobs "$num_jobs" --feature-config "$data/features.yaml"
  fi
  mark_done 4 fbank
fi

bpe_dir=$data/lang_bpe_$(conf bpe.vocab_size)
if should_run 5 bpe; then
  # Stage 0 writes fortunes text to general_train.jsonl; with a real corpus the BPE must see its transcripts.
  [ -z "$general_corpus" ] || prepare_general
  synthasr train-bpe --text "$data/text/general_train.jsonl" --out-dir "$bpe_dir" \
    --vocab-size "$(conf bpe.vocab_size)" --model-type "$(conf bpe.model_type bpe)"
  mark_done 5 bpe
fi

# stage_args KEY: "--stage a --stage b" for the schedule stages listed under stages.KEY in the config.
stage_args() { local s; for s in $(conf "stages.$1" ""); do printf -- '--stage %s ' "$s"; done; }

if should_run 6 baseline; then
  synthasr train --schedule "$schedule" --exp-dir "$exp" $(stage_args baseline) \
    2>&1 | tee "$exp/log/baseline.log"
  mark_done 6 baseline
fi

if should_run 7 adapt; then
  synthasr train --schedule "$schedule" --exp-dir "$exp" $(stage_args adapt) \
    2>&1 | tee "$exp/log/adapt.log"
  mark_done 7 adapt
fi

if should_run 8 ablation; then
  ablation=$(stage_args ablation)
  if [ -n "$ablation" ]; then
    synthasr train --schedule "$schedule" --exp-dir "$exp" $ablation 2>&1 | tee "$exp/log/ablation.log"
  else
    log "no ablation stages in $config"
  fi
  mark_done 8 ablation
fi

baseline_stage=$(conf stages.baseline)
final_stage=$(conf results.final_stage)
if should_run 9 decode; then
  # Hotword list = the medication names the recipe trained on (names_used.txt, role seen) plus the
  # unseen ones: a deployment would bias towards every name on its formulary.
  cut -f1 "$data/text/names_used.txt" > "$data/text/hotwords.txt"
  method=modified_beam_search  # hotword biasing lives in the beam search; both rows use it
  parts=(general_test med_test med_test_unseen)
  [ ! -f "$data/fbank/general_real_cuts_fbank.jsonl.gz" ] || parts+=(general_real)
  terms=(--terms "$data/text/names_used.txt" --terms-group-column 3)  # name recall, seen vs unseen
  hotword_args=(--hotwords-file "$data/text/hotwords.txt" --hotword-score "$(conf decode.hotword_score 0.5)")
  # Shallow fusion: a token n-gram (decode.lm.order) over the BPE units from all the text the recipe has (the general pool,
  # the training splits, every term of the list; never a dev/test sentence): local/prepare_lm_text.py.
  lm_order=$(conf decode.lm.order 0)
  decodings=(plain hotwords)  # each model decodes each set once and searches it once per decoding
  lm_args=()
  if [ "$lm_order" -gt 0 ]; then
    lm=$bpe_dir/lm_${lm_order}gram.arpa.gz
    $PYTHON local/prepare_lm_text.py --data-dir "$data" --out "$bpe_dir/lm_text.txt"
    synthasr train-lm --bpe-model "$bpe_dir/bpe.model" --text "$bpe_dir/lm_text.txt" \
      --terms "$data/text/names_used.txt" --order "$lm_order" --out "$lm" \
      --dev-text "$data/text/general_dev.jsonl"
    lm_args=(--lm "$lm" --lm-scale "$(conf decode.lm.scale 0.5)" --lm-token-bonus "$(conf decode.lm.token_bonus 2.0)"
             --ilm-scale "$(conf decode.lm.ilm_scale 0.0)")
    decodings+=(lm lm-hotwords)
  fi
  # evaluate_model STAGE ARGS...: the stage's model on the given sets with the given --decoding's (each set
  # encoded once); results are named <method>[-lm][-hotwords], with name recall (seen/unseen) for all.
  evaluate_model() {
    local model_stage=$1; shift
    synthasr evaluate --model "$exp/$model_stage/final.pt" --out-dir "$exp/$model_stage/decode_biasing" \
      --method "$method" --beam-size "$(conf decode.beam_size 4)" --suffix "$method" \
      "${hotword_args[@]}" "${lm_args[@]}" "${terms[@]}" "$@"
  }
  wanted=(); for d in "${decodings[@]}"; do wanted+=(--decoding "$d"); done
  synthetic=()  # synthetic sets are also scored per TTS engine; general_real has no engine tag
  for part in "${parts[@]}"; do
    [ "$part" = general_real ] || synthetic+=(--cuts "$data/fbank/${part}_cuts_fbank.jsonl.gz" --name "$part")
  done
  for model_stage in "$baseline_stage" "$final_stage"; do
    evaluate_model "$model_stage" "${synthetic[@]}" "${wanted[@]}" --breakdown engine
    if [[ " ${parts[*]} " == *" general_real "* ]]; then
      evaluate_model "$model_stage" --cuts "$data/fbank/general_real_cuts_fbank.jsonl.gz" --name general_real \
        "${wanted[@]}"
    fi
  done
  # Leave-one-engine-out ablations, decoded as the recipe ships: their per-engine name recall on the
  # medication sets is the transfer measure (RESULTS.md's cross-engine table).
  shipped=$(conf results.shipped_decoding "")
  shipped_decoding=plain; [ "$shipped" = "$method" ] || shipped_decoding=${shipped#"$method"-}
  for model_stage in $(conf results.leave_one_engine_out ""); do
    if [ -z "$shipped" ] || [ ! -f "$exp/$model_stage/final.pt" ]; then continue; fi
    evaluate_model "$model_stage" --cuts "$data/fbank/med_test_cuts_fbank.jsonl.gz" --name med_test \
      --cuts "$data/fbank/med_test_unseen_cuts_fbank.jsonl.gz" --name med_test_unseen \
      --decoding "$shipped_decoding" --breakdown engine
  done
  if [ "$(conf peer.enabled false)" = true ]; then
    # The peer row: Whisper tiny.en (faster-whisper) on the same audio, plain and biased with the names.
    peer_args=()
    for part in "${parts[@]}"; do
      f=$data/tts/${part}_cuts.jsonl.gz; [ "$part" != general_real ] || f=$(real_cuts)
      peer_args+=(--cuts "$part=$f")
    done
    n=$(conf peer.max_utterances 0); [ "$n" -eq 0 ] || peer_args+=(--limit "$n")
    for part in $(conf peer.bias_sets ""); do peer_args+=(--bias-set "$part"); done
    $PYTHON local/whisper_peer.py "${peer_args[@]}" --out-dir "$exp/peer" --threads "$num_jobs" \
      --hotwords-file "$data/text/hotwords.txt" --bias "$(conf peer.bias hotwords)" "${terms[@]}" \
      2>&1 | tee "$exp/log/peer.log"
  fi
  mark_done 9 decode
fi

if should_run 10 export; then
  cp "$exp/$final_stage/final.pt" "$exp/pretrained.pt.tmp" && mv "$exp/pretrained.pt.tmp" "$exp/pretrained.pt"
  synthasr export --model "$exp/pretrained.pt" --format onnx --out-dir "$exp/onnx"
  mark_done 10 export
fi

if should_run 11 report; then
  general_domain=$(cat "$data/tts/general_domain.txt" 2>/dev/null \
    || echo "synthetic speech: TTS of fortunes + WordNet sentences (local/prepare_text.py)")
  log "general domain: $general_domain"
  synthasr report --exp-dir "$exp" --final-stage "$final_stage"
  $PYTHON local/write_results.py --config "$config" --exp-dir "$exp" --data-dir "$data" \
    --out "$(conf results.out "$exp/RESULTS.md")"
  mark_done 11 report
fi

log "stages $stage..$stop_stage finished; results: $exp"
