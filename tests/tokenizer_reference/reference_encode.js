// node reference_encode.js TOKENIZER.json TEXTS.json: a JSON list of {ids, decoded} from the Rust
// `tokenizers` library (no special tokens added; special tokens skipped when decoding), and last
// the first text's ids with the special tokens added.
const { Tokenizer } = require('@anush008/tokenizers');
const fs = require('fs');
(async () => {
  const [tokenizerPath, textsPath] = process.argv.slice(2);
  const tokenizer = Tokenizer.fromFile(tokenizerPath);
  const texts = JSON.parse(fs.readFileSync(textsPath, 'utf8'));
  const out = [];
  for (const text of texts) {
    const ids = (await tokenizer.encode(text, null, { addSpecialTokens: false })).getIds();
    out.push({ ids, decoded: await tokenizer.decode(ids, true) });
  }
  // Last: the first text with the special tokens the tokenizer adds (BOS, where it adds one).
  out.push({ ids: (await tokenizer.encode(texts[0], null, { addSpecialTokens: true })).getIds() });
  process.stdout.write(JSON.stringify(out));
})();
