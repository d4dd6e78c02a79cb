/*
 * edgereason from C: load a model, chat-template a question, generate greedily with a
 * token callback, stream the same request token by token with each position's most
 * likely tokens (and cancel one), then
 * best-of-4 with the vote.
 *
 *   cargo build --release -p edgereason-c
 *   cc examples/c/generate.c -I bindings/c/include -L target/release -ledgereason_c \
 *      -Wl,-rpath,$PWD/target/release -o generate
 *   ./generate smollm2-135m "What is 12 + 30?"
 *
 * Lines starting "tokens:", "streamed:", "top_logprobs:", "cancelled:", "best_of:" and
 * "error:" are read by bindings/c/tests/c_example.rs.
 */
#include "edgereason.h"

#include <stdio.h>
#include <string.h>

#define CHECK(call)                                                            \
  do {                                                                         \
    if ((call) != ER_STATUS_OK) {                                              \
      fprintf(stderr, "%s: %s\n", #call, er_last_error());                     \
      return 1;                                                                \
    }                                                                          \
  } while (0)

/* Prints each token's text to stderr as it comes (user_data: a stream counter). */
static bool on_token(void *user_data, uint32_t stream, uint32_t token, const char *text) {
  (void)stream;
  (void)token;
  *(int *)user_data += 1;
  fputs(text, stderr);
  return true;
}

static void print_ids(const char *label, const uint32_t *ids, size_t n) {
  printf("%s", label);
  for (size_t i = 0; i < n; i++) printf(" %u", ids[i]);
  printf("\n");
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s MODEL QUESTION\n", argv[0]);
    return 2;
  }
  printf("edgereason %s\n", er_version());

  er_engine_options options;
  er_engine_options_init(&options);
  er_engine *engine = NULL;
  CHECK(er_engine_load(argv[1], &options, &engine));

  /* The chat template, then one greedy stream with a callback. */
  er_chat_message messages[] = {{"user", argv[2]}};
  char *prompt = NULL;
  CHECK(er_chat_template(engine, messages, 1, &prompt));

  er_generate_params params;
  er_generate_params_init(&params);
  params.max_tokens = 24;
  int seen = 0;
  er_result *result = NULL;
  CHECK(er_generate(engine, prompt, &params, on_token, &seen, &result));
  fputs("\n", stderr);
  const er_candidate *c = &result->candidates[0];
  print_ids("tokens:", c->tokens, c->n_tokens);
  printf("finish: %s callbacks: %d text: %s\n", c->finish_reason, seen, c->text);
  er_result_free(result);

  /* The same request on a worker thread, read token by token. */
  er_request *request = NULL;
  params.top_logprobs = 3; /* each token also lists the 3 most likely at its position */
  CHECK(er_request_start(engine, prompt, &params, &request));
  params.top_logprobs = 0;
  uint32_t streamed[64];
  size_t n_streamed = 0, top_ok = 0;
  er_token token;
  er_status status;
  while ((status = er_request_next(request, &token)) == ER_STATUS_OK) {
    if (n_streamed < 64) streamed[n_streamed++] = token.id;
    /* Greedy: the token is the most likely, listed first with its own log-prob. */
    if (token.n_top == 3 && token.top_ids[0] == token.id &&
        token.top_logprobs[0] == token.logprob && token.top_logprobs[1] <= token.logprob)
      top_ok++;
  }
  if (status != ER_STATUS_END) {
    fprintf(stderr, "er_request_next: %s\n", er_last_error());
    return 1;
  }
  CHECK(er_request_finish(request, &result));
  er_request_free(request);
  er_result_free(result);
  print_ids("streamed:", streamed, n_streamed);
  printf("top_logprobs: %zu of %zu tokens list the token first\n", top_ok, n_streamed);

  /* Cancelled after its first token. */
  CHECK(er_request_start(engine, prompt, &params, &request));
  CHECK(er_request_next(request, &token));
  CHECK(er_request_cancel(request));
  CHECK(er_request_finish(request, &result));
  printf("cancelled: %s after %zu tokens\n", result->candidates[0].finish_reason,
         result->candidates[0].n_tokens);
  er_result_free(result);
  er_request_free(request);

  /* Best-of-4: sampled candidates decoded together, then the majority vote. */
  params.n = 4;
  params.vote = ER_VOTE_MAJORITY;
  params.temperature = 0.8f;
  params.seed = 1;
  params.max_tokens = 32;
  CHECK(er_generate(engine, prompt, &params, NULL, NULL, &result));
  printf("best_of: %zu candidates, answer %s, %zu distinct answers\n", result->n_candidates,
         result->answer ? result->answer : "(none)", result->n_votes);
  er_result_free(result);

  /* Errors are a status and a message, never a crash. */
  if (er_engine_load_adapter(engine, "x", "/nonexistent/adapter") != ER_STATUS_OK)
    printf("error: %s\n", er_last_error());

  er_string_free(prompt);
  er_engine_free(engine);
  return 0;
}
