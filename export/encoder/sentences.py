"""The fixed, varied sentence set used to check an exported text-embedding model against its reference.

Covers: short and medium English, inputs longer than the 256-token window (so truncation is exercised),
non-English text (CJK, Arabic, Hebrew, Cyrillic, Devanagari, accented Latin), emoji, punctuation-only,
whitespace-only, numbers/code/URLs, and the empty string. The empty string is embedded like any other
input: the tokenizer turns it into `[CLS] [SEP]` (token count 2), exactly as sentence-transformers does.

Keep this list deterministic: parity numbers in reports and tests are only comparable on the same inputs.
"""

from __future__ import annotations

_LONG_ENGLISH = (
    "The history of computing is a story of layers. At the bottom sit transistors, switching billions of "
    "times a second; above them, logic gates and adders; above those, instruction sets that compilers "
    "target; above the compilers, operating systems that schedule work and isolate programs from one "
    "another; and above all of it, the applications people actually use. Each layer hides the details of "
    "the one below, which is why a web developer rarely thinks about cache lines and a chip designer rarely "
    "thinks about user interfaces. Yet performance problems have a habit of crossing layers: a slow page "
    "may come from a database index, a garbage collector, a network buffer or a thermal limit on a "
    "processor that throttles under sustained load. Serving machine-learning models is no different. "
    "A request arrives over HTTP, is parsed, validated, tokenized, batched with its neighbours, copied to "
    "an accelerator, run through dozens of matrix multiplications, pooled, normalized and sent back, and "
    "every one of those steps can dominate the latency budget if it is done carelessly. "
)

_LONG_CJK = (
    "机器学习模型的部署需要考虑延迟、吞吐量和成本之间的平衡。动态批处理可以把多个请求合并成一个批次，"
    "从而更好地利用硬件资源，但等待时间过长会增加尾部延迟。"
    "東京の朝は早い。電車は人でいっぱいで、駅のホームには列ができている。"
    "한국어 문장도 포함합니다. 검색 시스템은 문장 임베딩을 사용하여 의미가 비슷한 문서를 찾습니다. "
)

PARITY_SENTENCES: tuple[str, ...] = (
    # short English
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "How do I reset my password?",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "Triton batches concurrent requests to use the hardware better.",
    "Embeddings map text to vectors so that similar meanings end up close together.",
    "I love this product, it works perfectly!",
    "This is the worst experience I have ever had.",
    "yes",
    "no",
    "a",
    "OK",
    "ALL CAPS SENTENCE SHOUTING AT YOU",
    "lowercase sentence without punctuation",
    # medium English
    "The committee postponed the vote until next week because several members were travelling and could "
    "not attend the meeting in person.",
    "Photosynthesis converts light energy into chemical energy, storing it in the bonds of glucose "
    "molecules that the plant later uses for growth.",
    "If the queue is full, the server rejects the request immediately so that the client can retry "
    "elsewhere instead of waiting for a timeout.",
    # long inputs (> 256 tokens; truncated to the model's window)
    _LONG_ENGLISH,
    _LONG_ENGLISH * 2,
    "word " * 400,
    _LONG_CJK * 4,
    ("El aprendizaje automático permite a las máquinas aprender de los datos sin ser programadas explícitamente. ")
    * 20,
    # accented Latin and other European languages
    "Café crème brûlée à la française, s'il vous plaît.",
    "Ça va très bien, merci beaucoup !",
    "Die Straße ist nass, weil es geregnet hat.",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein.",
    "¿Dónde está la biblioteca? ¡Está allí!",
    "São Paulo é a maior cidade do Brasil.",
    "Zażółć gęślą jaźń.",
    "Příliš žluťoučký kůň úpěl ďábelské ódy.",
    "Ελληνικά: η γρήγορη καφέ αλεπού.",
    "Привет, как дела? Всё хорошо.",
    "Türkçe karakterler: ğüşöçı İĞÜŞÖÇ.",
    # CJK
    "我爱自然语言处理。",
    "今天天气很好，我们去公园散步吧。",
    "日本語のテキストです。",
    "東京は日本の首都です。",
    "안녕하세요, 만나서 반갑습니다.",
    # right-to-left and other scripts
    "مرحبا بالعالم",
    "اللغة العربية جميلة جدا.",
    "שלום עולם",
    "नमस्ते दुनिया",
    "สวัสดีครับ",
    # emoji
    "I love pizza 🍕🍕🍕",
    "😀😃😄😁😆",
    "Great job 👍 see you at 🏠 later 🎉",
    "👩‍👩‍👧‍👦 family emoji with zero-width joiners",
    "🇫🇷🇩🇪🇯🇵",
    # punctuation, symbols, whitespace
    "!!!",
    "?!?!",
    "...",
    "-- // ## $$ %% ^^",
    "(){}[]<>",
    "   ",
    "\t\n",
    # numbers, code, URLs, mixed
    "12345 67890",
    "3.14159 2.71828 1.41421",
    "def f(x): return x ** 2",
    "SELECT * FROM users WHERE id = 42;",
    "https://example.com/path?query=1&lang=en#section",
    "user@example.com",
    "C'est la vie — mixed English and français in one sentence.",
    "MiniLM-L6-v2 has 6 layers and 384-dim outputs.",
    # the empty string
    "",
)
