"""Voice I/O for the kiosk: voice activity detection (Silero on ONNX Runtime) and speech synthesis (Piper,
run as a separate process because piper-tts is GPL-3.0; DESIGN §5). Nothing here imports torch or piper."""

from runtime.voice.tts import PiperTTS, TTSError
from runtime.voice.vad import Endpointer, SileroVAD, SpeechEnd, SpeechStart

__all__ = ["Endpointer", "PiperTTS", "SileroVAD", "SpeechEnd", "SpeechStart", "TTSError"]
